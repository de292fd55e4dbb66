"""cnnlab: a reproducible DVC pipeline that trains, evaluates and inspects classic image classifiers.

Data flows download -> prepare -> train -> evaluate -> report; each stage script in `stages/` is a
thin wrapper over one module here.
"""


class CnnlabError(Exception):
    """A problem the user can fix (bad params, missing data). Stages print it as one line, exit 1."""


__all__ = ["CnnlabError"]
