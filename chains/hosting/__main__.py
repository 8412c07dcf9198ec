from chains.hosting.launcher import main

main()
