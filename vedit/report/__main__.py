from vedit.report import main

main()
