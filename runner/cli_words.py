"""A command line rebuilt from its parsed values, for the commands the runner prints or starts: the one that
continues a table, the one that trains a sweep's best arm on the whole training split, and each Slurm task's. The
words come from the parser's own options, in its order, so a new option is carried without being listed here, and
the rebuilt line parses to the same values. No torch here."""
import argparse


def written(value) -> str:
    """A parsed value as its option takes it again: lists of versions or seeds joined by commas."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def command_words(parser: argparse.ArgumentParser, args: argparse.Namespace, without=(), **replaced) -> list[str]:
    """The words after `main.py` that give the parser args' values: each option whose value is not its default,
    except the destinations named in `without`, and with the values in `replaced` (e.g. out=FOLDER) instead of
    args' own."""
    values = {**vars(args), **replaced}
    words = ["ablate"] if values.get("ablate") else []
    for action in parser._actions:
        value = values.get(action.dest)
        if action.dest in without or value is None or value == action.default:
            continue
        if not action.option_strings:
            words.append(written(value))
        elif isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0 if value else 1])
        elif action.nargs == 0:  # a switch given
            words.append(action.option_strings[0])
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                words += [action.option_strings[0], written(item)]
        else:
            words += [action.option_strings[0], written(value)]
    return words
