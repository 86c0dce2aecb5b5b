"""The web console (`edgectl console`, and beside `edgectl cluster up`'s live view).

Only what registering the commands needs lives here: the server (`app`) imports aiohttp,
which a command that does not serve the console should not pay for at every start.
"""

PORT_DEFAULT = 8070
