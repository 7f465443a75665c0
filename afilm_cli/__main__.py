from afilm_cli.main import main

main()
