from tlearn.cli import main

main()
