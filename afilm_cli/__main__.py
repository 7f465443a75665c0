from afilm_cli.entry import run

run()
