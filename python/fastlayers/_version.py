# The release version without the local tag; setup.py reads it, and a built wheel's version adds +pt<torch><cuda>.
BASE = "0.1.0"
