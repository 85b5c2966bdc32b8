from rarp_announce.cli import main

main()
