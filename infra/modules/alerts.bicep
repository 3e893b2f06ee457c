// Azure Monitor alerts for the operator: log search alert rules (scheduled query rules,
// Microsoft.Insights/scheduledQueryRules@2023-12-01, the current GA version) on the
// Application Insights component, and the action group that mails them. Each query is a file
// in infra/monitoring/alerts/ (tests/unit/test_kql.py runs them against the events of a lab run);
// each rule's name is a heading of "Alerts in Azure Monitor" in docs/operations.md, which
// says what it means and what to do.

param location string
param tags object = {}

@description('Resource id of the Application Insights component the rules query.')
param appInsightsId string

@description('Name of the action group.')
param actionGroupName string

@description('Address the action group mails.')
param alertEmail string

@description('Minutes between two polls (POLL_SCHEDULE); the no-poll window is at least three of them and at least 30 minutes.')
@minValue(1)
@maxValue(60)
param pollIntervalMinutes int = 1

@description('Function failures: a function alerts above this share of failed invocations (percent) ...')
@minValue(1)
@maxValue(100)
param functionFailurePercent int = 10

@description('... once it has failed at least this many times in the window.')
@minValue(1)
param functionFailureMinimum int = 3

@description('Resource id of the Azure Relay namespace (CONNECTIVITY=relay); empty: no relay listener alert.')
param relayNamespaceId string = ''

var failures = replace(replace(loadTextContent('../monitoring/alerts/function-failures.kql'),
  'let min_failures = 3;', 'let min_failures = ${functionFailureMinimum};'),
  'let max_failure_percent = 10;', 'let max_failure_percent = ${functionFailurePercent};')

var runbook = 'What to do: docs/operations.md, "Alerts in Azure Monitor", '

// The no-poll rule looks for the absence of rows, which a log alert sees late or wrongly when
// ingestion lags: telemetry reaches Log Analytics minutes after it is written ("Log data
// ingestion time in Azure Monitor"), and "Troubleshoot log search alerts" (learn.microsoft.com,
// azure-monitor/alerts) warns that log alerts detect a lack of data poorly. So the window is
// at least 30 minutes (three poll intervals when the interval is longer), many polls wide: a
// few minutes of ingestion delay cannot empty it. docs/operations.md, "No successful poll".
var noPollWindow = pollIntervalMinutes <= 10 ? 'PT30M' : pollIntervalMinutes <= 20 ? 'PT1H' : 'PT3H'
var rules = [
  {
    name: 'poison-message'
    displayName: 'O365 provisioning: message on a poison queue'
    description: 'A queue message failed maxDequeueCount times and was parked on <queue>-poison. ${runbook}"Poison message".'
    severity: 1
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../monitoring/alerts/poison.kql')
    dimensions: ['queue']
  }
  {
    name: 'no-poll'
    displayName: 'O365 provisioning: no successful poll'
    description: 'No poll of O365_Provision succeeded in ${noPollWindow}: new users are not being picked up. ${runbook}"No successful poll".'
    severity: 1
    frequency: 'PT5M'
    window: noPollWindow
    query: loadTextContent('../monitoring/alerts/no-poll.kql')
    dimensions: []
  }
  {
    name: 'user-stuck'
    displayName: 'O365 provisioning: user stuck'
    description: 'A user has waited STUCK_AFTER attempts at one step. ${runbook}"User stuck".'
    severity: 2
    frequency: 'PT15M'
    window: 'PT15M'
    query: loadTextContent('../monitoring/alerts/stuck.kql')
    dimensions: ['step']
  }
  {
    name: 'licence-shortage'
    displayName: 'O365 provisioning: licence shortage'
    description: 'Users wait for a free unit of a SKU. ${runbook}"Licence shortage".'
    severity: 2
    frequency: 'PT30M'
    window: 'PT2H'
    query: loadTextContent('../monitoring/alerts/shortage.kql')
    dimensions: ['sku']
  }
  {
    name: 'role-plan-held'
    displayName: 'O365 provisioning: role plan held'
    description: 'A role cycle holds grants or revocations over a limit until an operator approves the plan. ${runbook}"Held role plan".'
    severity: 2
    frequency: 'PT15M'
    window: 'PT30M'
    query: loadTextContent('../monitoring/alerts/held-plan.kql')
    dimensions: ['plan_id']
  }
  {
    name: 'function-failures'
    displayName: 'O365 provisioning: function failures'
    description: 'A function failed ${functionFailureMinimum} times or more, above ${functionFailurePercent} % of its invocations. ${runbook}"Function failures".'
    severity: 1
    frequency: 'PT15M'
    window: 'PT15M'
    query: failures
    dimensions: ['operation_Name']
  }
  {
    name: 'relay-outage'
    displayName: 'O365 provisioning: relay outage'
    description: 'A hybrid connection to Exchange or a domain controller cannot be used, and has not come back. ${runbook}"Relay outage".'
    severity: 1
    frequency: 'PT5M'
    window: 'PT6H'
    query: loadTextContent('../monitoring/alerts/relay-outage.kql')
    dimensions: ['hybrid_connection']
  }
]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'o365prov'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: 'o365prov-${rule.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    // The service's events arrive only once it runs: a table or field that has no row yet
    // must not fail the deployment.
    skipQueryValidation: true
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [for dimension in rule.dimensions: {
            name: dimension
            operator: 'Include'
            values: [
              '*'
            ]
          }]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}]

// A listener connected to a hybrid connection. Anyone holding a SAS key of the namespace (the
// RootManageSharedAccessKey every namespace keeps) or Azure Relay Listener can register a
// listener, and the relay then hands some of the app's streams to it instead of the bridge (TLS
// stops it reading them, not taking them away). Azure Monitor's Relay metrics count successful
// listener connections per hybrid connection (ListenerConnections-Success, dimension EntityName:
// "Supported metrics for Microsoft.Relay/namespaces", learn.microsoft.com); they do not say who
// connected, so this alert also fires when the bridge restarts: the runbook says how to tell.
resource relayListener 'Microsoft.Insights/metricAlerts@2018-03-01' = if (!empty(relayNamespaceId)) {
  name: 'o365prov-relay-listener-connected'
  location: 'global'
  tags: tags
  properties: {
    description: 'A listener connected to a hybrid connection of the relay: the bridge restarting, or someone else listening. ${runbook}"Relay listener connected".'
    severity: 2
    enabled: true
    scopes: [
      relayNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'listener-connected'
          metricNamespace: 'Microsoft.Relay/namespaces'
          metricName: 'ListenerConnections-Success'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

output actionGroupId string = actionGroup.id
output ruleNames array = [for (rule, i) in rules: alert[i].name]
