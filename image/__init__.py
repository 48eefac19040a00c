"""Host side of the CA appliance builder: config, artifacts, kickstart, bases, disk, qemu, OVA."""
