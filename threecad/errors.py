"""User-facing errors: the CLI prints them as one line, without a traceback."""


class ThreecadError(Exception):
    """A problem the user can fix (bad input, missing data, missing weights).

    The message says what went wrong, where, and what to do next.
    """

    exit_code = 2


class DatasetError(ThreecadError):
    """The dataset root is missing, empty or malformed."""


class WeightsUnavailable(ThreecadError):
    """Pretrained weights are neither cached, installed nor downloadable."""
