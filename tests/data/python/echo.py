# Echo: returns the value of the "message" argument (Teaclave's mesapy_echo example).


def entrypoint(argv):
    assert len(argv) % 2 == 0, "arguments come as key/value pairs"
    for i in range(0, len(argv), 2):
        if argv[i] == "message":
            return argv[i + 1]
    raise ValueError("no message argument")
