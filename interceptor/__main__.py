from interceptor.cli import main

main()
