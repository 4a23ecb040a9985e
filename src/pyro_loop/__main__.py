from pyro_loop.cli.entry import main

main()
