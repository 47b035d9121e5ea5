# ruff: noqa: F821 -- teaclave_open is a builtin the executor installs
# Optional inputs (Teaclave's mesapy_optional_files example): the function declares three
# optional inputs, input_data1..3, and reports on the first one only.


def entrypoint(argv):
    try:
        f = teaclave_open("input_data1", "rb")
        line = f.readline()
        f.close()
    except RuntimeError:
        return "input_data1 does not exist"
    return line
