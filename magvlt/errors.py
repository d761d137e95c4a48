"""The one error type that means "the user's input is wrong": the CLI prints it and exits 2."""


class UserError(ValueError):
    """Bad input (file, option, image, text or checkpoint) with a message a person can act on."""
