// The one user-assigned identity the app uses for everything: storage, Key Vault, Application
// Insights, Graph. Graph application permissions are granted to it afterwards by
// infra/scripts/grant-graph-permissions.sh (Bicep cannot grant Graph app roles).

@description('Name of the user-assigned managed identity.')
param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
