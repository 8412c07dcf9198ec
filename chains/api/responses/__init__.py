"""OpenAI's Responses API (`/v1/responses`) over the one streaming core: the request and the Response object
(protocol), the generator over the runs' serving (serving), the routes (router)."""
