// Azure Relay namespace with one hybrid connection per on-premises endpoint (Exchange's WinRM or
// /PowerShell endpoint, each domain controller's LDAPS). The app opens streams on them itself,
// as a sender of the Hybrid Connections protocol (shared/relay/sender.py): App Service's own Hybrid
// Connections feature is Windows-only ("Azure Functions networking options": "Linux apps aren't
// supported"), and Python function apps run only on Linux.
//
// Authentication: the app and the bridge use Microsoft Entra ID. The app's identity gets the
// built-in role "Azure Relay Sender" on exactly these hybrid connections; the bridge on the
// premises (azbridge) gets "Azure Relay Listener" on them when its principal is given ("Azure
// Relay authentication and authorization", learn.microsoft.com,
// azure-relay/relay-authentication-and-authorization). SAS cannot be turned off: a Relay
// namespace has no disableLocalAuth (Microsoft.Relay/namespaces has no such property in any API
// version, Azure/bicep-types-az generated/relay/; ARM ignored it), and every namespace keeps its
// RootManageSharedAccessKey. This template creates no further SAS rule and reads no key; who may
// list the keys (Owner and Contributor on the namespace hold that action) and the
// listener alert (modules/alerts.bicep) are the controls: docs/security.md, "Azure Relay keys".

param name string
param location string
param tags object = {}

@description('On-premises endpoints: [{ name: string, host: string, port: int }]; one hybrid connection each.')
param endpoints array

@description('Principal id of the app identity (gets Azure Relay Sender on each hybrid connection).')
param senderPrincipalId string

@description('Object id of the principal the on-premises bridge signs in as (a service principal, or an Arc-enabled server\'s identity); gets Azure Relay Listener on each hybrid connection. Empty: assign it later (docs/relay-bridge.md).')
param listenerPrincipalId string = ''

// Built-in role definitions (ids are the same in every tenant).
var azureRelaySender = '26baccc8-eea7-41f1-98f4-1762cc7f685d'
var azureRelayListener = '26e0b698-aa6d-4085-9386-aadae190014d'

resource namespace 'Microsoft.Relay/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    publicNetworkAccess: 'Enabled'
  }
}

resource connections 'Microsoft.Relay/namespaces/hybridConnections@2024-01-01' = [for endpoint in endpoints: {
  parent: namespace
  name: endpoint.name
  properties: {
    requiresClientAuthorization: true
    // For people reading the portal: where the bridge on the premises forwards this one to.
    userMetadata: string([
      {
        key: 'endpoint'
        value: '${endpoint.host}:${endpoint.port}'
      }
    ])
  }
}]

resource senders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (endpoint, i) in endpoints: {
  name: guid(connections[i].id, senderPrincipalId, azureRelaySender)
  scope: connections[i]
  properties: {
    principalId: senderPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureRelaySender)
  }
}]

resource listeners 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (endpoint, i) in endpoints: if (!empty(listenerPrincipalId)) {
  name: guid(connections[i].id, listenerPrincipalId, azureRelayListener)
  scope: connections[i]
  properties: {
    principalId: listenerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureRelayListener)
  }
}]

output name string = namespace.name
output id string = namespace.id
output host string = '${namespace.name}.servicebus.windows.net'
