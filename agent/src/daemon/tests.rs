//! Unit tests of the daemon on MemStore, FakeKernel and a fake firewall runner.
