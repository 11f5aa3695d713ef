"""gptlab: build your own ChatGPT end to end and keep it improving."""

__version__ = "0.1.0"
