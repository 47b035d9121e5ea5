import socket, ssl
def test_dump(platform):
    host, _, port = platform.auth_address.rpartition(":")
    ctx = ssl._create_unverified_context()
    with socket.create_connection((host, int(port))) as s, ctx.wrap_socket(s) as t:
        open("/tmp/scratch/leaf.der", "wb").write(t.getpeercert(binary_form=True))
    import shutil
    shutil.copy(platform.config.as_root_path, "/tmp/scratch/root.pem")
    shutil.copy(platform.config.enclave_info_path, "/tmp/scratch/enclave_info.toml")
    print(platform.auth_address, platform.config.home)
