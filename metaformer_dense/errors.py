"""The errors the core raises about checkpoints: each message names the problem and the fix."""

__all__ = ['CheckpointError', 'DownloadError']


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into."""


class DownloadError(CheckpointError):
    """A checkpoint named by URL or hub name could not be fetched; the message says what to do."""
