from edgekiln.cli import main

main()
