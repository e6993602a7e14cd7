"""querylift: the command line that ties service, training and the setup steps together."""
