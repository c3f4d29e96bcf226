"""Ray pipeline: config, video probe/decode/sampling, the stage graph, CLI."""

__version__ = "0.1.0"
