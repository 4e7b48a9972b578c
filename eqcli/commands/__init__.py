"""Each module defines `register(app)`; order here is the order in `eqimg --help`."""
from eqcli.commands import analyze, convert, data, evaluate, info, sample, tokenize, tokenizer, train

COMMAND_MODULES = [data, tokenizer, tokenize, train, sample, analyze, evaluate, convert, info]
