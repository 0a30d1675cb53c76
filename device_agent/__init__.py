"""device-agent: media and fleet agent for Raspberry Pi-class smart hardware."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("device-agent")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
