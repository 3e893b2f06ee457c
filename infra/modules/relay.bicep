// Azure Relay namespace with one hybrid connection per on-premises endpoint (Exchange WinRM,
// each domain controller's LDAPS). App Service needs client authorisation on and an
// `endpoint` metadata item naming host:port. Two rules per connection: the app only sends,
// the Hybrid Connection Manager on premises only listens.

param name string
param location string
param tags object = {}

@description('On-premises endpoints: [{ name: string, host: string, port: int }].')
param endpoints array

resource namespace 'Microsoft.Relay/namespaces@2021-11-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
}

resource connections 'Microsoft.Relay/namespaces/hybridConnections@2021-11-01' = [for endpoint in endpoints: {
  parent: namespace
  name: endpoint.name
  properties: {
    requiresClientAuthorization: true
    userMetadata: string([
      {
        key: 'endpoint'
        value: '${endpoint.host}:${endpoint.port}'
      }
    ])
  }
}]

resource senders 'Microsoft.Relay/namespaces/hybridConnections/authorizationRules@2021-11-01' = [for (endpoint, i) in endpoints: {
  parent: connections[i]
  name: 'app-send'
  properties: {
    rights: [
      'Send'
    ]
  }
}]

resource listeners 'Microsoft.Relay/namespaces/hybridConnections/authorizationRules@2021-11-01' = [for (endpoint, i) in endpoints: {
  parent: connections[i]
  name: 'hcm-listen'
  properties: {
    rights: [
      'Listen'
    ]
  }
}]

output name string = namespace.name
output id string = namespace.id
