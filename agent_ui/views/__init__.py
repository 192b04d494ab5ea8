"""The web app's request handlers, one module per page (each has `setup(app)`)."""
