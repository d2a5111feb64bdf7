"""Drivers that run the recipe many times and put the runs side by side (``espnet-lowrank compare``,
``espnet-lowrank budget-study``). Each takes the recipe dir (``egs2/<corpus>/asr1``) as an option, runs
its ``run.sh``, and calls the other tools through their Python functions."""
