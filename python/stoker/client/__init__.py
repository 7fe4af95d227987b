"""The client: tasks and their options, the registry, the send path, the
queue facade, job handles and waiting.
"""
