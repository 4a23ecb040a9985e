from pyro_loop.cli.app import main

main()
