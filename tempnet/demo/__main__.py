"""`python -m tempnet.demo`: see tempnet.demo.run."""

from tempnet.demo.run import main

if __name__ == "__main__":
    main()
