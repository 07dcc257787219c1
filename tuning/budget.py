"""A search's time budget, counted over every sitting in its folder.

Each finished trial writes its wall time to ``time.json`` in its trial folder
(:func:`tuning.search._timed`), a failed one too; the budget is the sum of
those. It is checked before each trial starts: the trial running when the
budget runs out finishes, and a trial cut short by Ctrl-C or a kill is not
counted (it runs again on the next sitting).
"""

import os

from nin_keras.errors import NinError
from nin_keras.io import read_json_object
from nin_keras.settings import is_number

TIME_FILE = "time.json"


class BudgetSpent(Exception):
    """Raised before a trial would start once the finished trials have used the budget."""

    def __init__(self, spent_seconds, budget_minutes):
        super().__init__(f"{spent_seconds / 60:.1f} of {budget_minutes:g} minutes spent")
        self.spent_seconds = spent_seconds
        self.budget_minutes = budget_minutes


def trial_seconds(trial_dir):
    """The wall seconds a finished trial took, or None (not finished, or a ``time.json`` that is not ours).

    A search folder can come from elsewhere: a file that is not a JSON object
    with a finite, non-negative ``seconds`` counts as no time rather than
    stopping the search.
    """
    path = os.path.join(trial_dir, TIME_FILE)
    if not os.path.isfile(path):
        return None
    try:
        seconds = read_json_object(path, "trial time").get("seconds")
    except NinError:
        return None
    return float(seconds) if is_number(seconds) and seconds >= 0 else None


def spent_seconds(project_dir):
    """The finished trials' wall seconds in a keras-tuner project folder, every sitting included."""
    if not os.path.isdir(project_dir):
        return 0.0
    names = [n for n in os.listdir(project_dir) if n.startswith("trial_")]
    return sum(trial_seconds(os.path.join(project_dir, n)) or 0.0 for n in names)


def check(project_dir, budget_minutes):
    """Raise :class:`BudgetSpent` when ``budget_minutes`` (None: no budget) are used up."""
    if budget_minutes is None:
        return
    spent = spent_seconds(project_dir)
    if spent >= budget_minutes * 60:
        raise BudgetSpent(spent, budget_minutes)
