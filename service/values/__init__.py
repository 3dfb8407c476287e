"""Values every room passes around, with no dependency beyond NumPy: loss results and columns.

The client, the offline code, the engine and the server all hold them, so they sit below all of
them; importing them costs no catalogue and no server.
"""
