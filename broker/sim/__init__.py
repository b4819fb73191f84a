"""The placement simulator: workloads (`scenarios`) replayed through the real scheduling
core on a virtual clock, so strategies can be compared in seconds on hours of traffic
(`taskbroker simulate`)."""
