"""What the API's bodies look like: the request models the routes validate (`requests`,
`responses_request`) and the documented response models of `/openapi.json` (`response_bodies`)."""
