# Entry point run as a script: it only imports `server`, whose cached bytecode loads faster
# than compiling a script on every workspace start.
import sys

import server

server.main(sys.argv)
