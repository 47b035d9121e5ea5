# ruff: noqa: F821 -- teaclave_open is a builtin the executor installs
# The file-API unit test of the reference's Python executor: input in_f1 holds "Hello\nWorld",
# output out_f1 receives a fixed message, and the function returns nothing.
import teaclave


def expect_ffi_error(name, mode):
    try:
        teaclave_open(name, mode)
    except RuntimeError as e:
        assert e.message == "fileio_init: teaclave_ffi_error", e.message
    else:
        raise AssertionError("opening %s with mode %s did not fail" % (name, mode))


def expect_not_supported(name, mode):
    try:
        f = teaclave_open(name, mode)
    except RuntimeError as e:
        assert e.message == "Teaclave Not Supported", e.message
    else:
        f.close()


def entrypoint(argv):
    f = teaclave_open("in_f1", "rb")
    line = f.readline()
    f.close()
    assert line == "Hello\n", line

    with teaclave.open("in_f1", "rb") as f:
        line = f.readline()
    assert line == "Hello\n", line

    expect_ffi_error("invalid_key", "rb")
    expect_ffi_error("invalid_key", "wb")
    expect_not_supported("in_f1", "r")
    expect_not_supported("out_f1", "w")

    f = teaclave_open("out_f1", "wb")
    f.write("This message is from Mesapy!")
    f.close()
