from ganq.entry import main

main()
