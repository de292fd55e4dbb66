"""cnnlab: a reproducible DVC pipeline that trains, evaluates and looks inside classic image classifiers.

Data flows download -> prepare -> train -> evaluate -> analyze -> report; each stage script in `stages/`
reads its params (config/), calls one module here and writes its outputs (results.py). What keeps a
stage process honest (interrupts, all-or-nothing files, timings) is in plumbing/.
"""


class CnnlabError(Exception):
    """A problem the user can fix (bad params, missing data). Stages print it as one line, exit 1."""


__all__ = ["CnnlabError"]
