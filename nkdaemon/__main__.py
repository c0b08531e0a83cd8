from nkdaemon.cli import main

main()
