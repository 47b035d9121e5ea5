# Kettle: `make up` starts the platform in simulation mode, `make test` runs the suite
# (two pytest workers, one test file each at a time: the tests mostly wait on processes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: up test proto clean-venv tee-inputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/kettle up

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Regenerate the protobuf/gRPC modules from proto/ (a test fails when they are stale).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean-venv:
	rm -rf $(VENV)

# Real inputs of `kettle audit measure`'s tests and of a confidential-VM deployment
# (docs/deploy-tee.md), under build/ (ignored by git): the SEV-SNP firmware built from
# Debian's edk2 source, the kernel of Debian's linux-image package, the recipe's initrd.
TEE := build/tee
KETTLE_SOURCES := $(shell find src -name '*.py') pyproject.toml

tee-inputs: $(TEE)/ovmf/OVMF.fd $(TEE)/kernel/vmlinuz $(TEE)/initrd/kettle-initrd.img

$(TEE)/ovmf/OVMF.fd: deploy/tee/build-ovmf-amdsev.sh
	deploy/tee/build-ovmf-amdsev.sh $(TEE)/ovmf

# The kernel package linux-image-amd64 currently points to.
$(TEE)/kernel/linux-image.deb:
	mkdir -p $(TEE)/kernel
	cd $(TEE)/kernel && apt-get download -q "$$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: //p' | head -1)"
	mv $(TEE)/kernel/linux-image-*.deb $@

$(TEE)/kernel/vmlinuz: $(TEE)/kernel/linux-image.deb
	dpkg-deb --fsys-tarfile $< | tar x -O --wildcards './boot/vmlinuz-*' > $@.tmp
	mv $@.tmp $@

$(TEE)/initrd/kettle-initrd.img: $(STAMP) $(TEE)/kernel/linux-image.deb $(KETTLE_SOURCES) deploy/tee/build-initrd.sh deploy/tee/init deploy/tee/udhcpc.sh $(wildcard deploy/tee/home/*)
	PYTHON=$(BIN)/python deploy/tee/build-initrd.sh $(TEE)/initrd $(TEE)/kernel/linux-image.deb
