from pinnzo.cli import main

main()
