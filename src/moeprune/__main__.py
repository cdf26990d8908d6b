from moeprune.cli import main

main()
