"""Running the appliance: QEMU command lines and processes (qemu), the accelerator choice (accel),
and `invoke verify` (verify), which boots an image and checks it over SSH."""
