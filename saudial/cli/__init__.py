"""The command line: flags that mirror the settings, one subcommand per job, errors as exit codes."""
