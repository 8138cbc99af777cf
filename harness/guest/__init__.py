"""The guest machine: the QEMU process (QMP, console, accel probe), SSH into it,
the watchdog that notices a hung or panicked guest, and qtest for device tests.
"""
