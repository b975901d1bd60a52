"""The run machinery behind main.py: the command line's checks and commands, the settings types, run folders and
tables, statistics, processes and devices. The ladder (configs.py), the data (data.py), the loop (train.py) and the
models (models/) stay at the top, where a reader starts."""
