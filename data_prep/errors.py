"""The one exception every bad input to data preparation raises."""


class PrepError(ValueError):
    """A source, option or output folder that `prepare` cannot work with.

    The message names the problem (the file, folder, class or option) and says what to do, so the
    CLI can print it as is, without a traceback.
    """
