"""The faces: quart-trio routes and websockets that authenticate, decode, call core and encode."""
