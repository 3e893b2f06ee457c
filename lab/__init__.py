"""The local hybrid lab: real peers on loopback for tests and the demo."""
