"""The runtime: carries out what the scheduling core decides, on the event loop.

The Engine keeps the live tasks, the connected workers (the registry) and the pools'
schedulers; it writes every change to the store, sends assignments and cancels on the
workers' channels, tells the observers, and turns the core's next timer into one loop
wake-up. It knows neither gRPC nor protobuf: the service layer (broker.service) calls it.
"""
